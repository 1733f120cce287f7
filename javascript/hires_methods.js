// Hires Methods: keeps the accordion's plan line right and its hover help in place.
// Works with A1111 (Gradio 3) and Forge (Gradio 4); everything is namespaced hiresMethods*.
//
// * Every event that recomputes the plan carries a stamp (client:count), so the server can drop an
//   answer to an earlier event that arrives after a later one (lib_hires/hosts/webui.py, LatestOnly).
// * Gradio 3 ignores an event while the same event's request is in flight, so the last keystrokes of
//   fast typing may never reach the server. After any edit the page therefore asks once more, 300 ms
//   after the last one ("settle"), and again until the server has answered that request.
// * The plan is asked for at page load, and again while it was made for another checkpoint than the
//   one selected (A1111 loads a new checkpoint in the background).
(function () {
    var STAMP = 'hires-methods-stamp'; // the stamp textbox's value, replaced per event
    var client = Math.random().toString(36).slice(2);
    var count = 0;
    var pages = {}; // tab -> {follow: [id prefixes], timer, settle (stamp count of the last settle)}

    function stamp(args) {
        var index = args.indexOf(STAMP);
        if (index < 0) return args;
        args[index] = client + ':' + (++count);
        return args.slice(0, index + 1); // Gradio passes inputs then outputs; the server gets the inputs
    }

    window.hiresMethodsStamp = function () {
        return stamp(Array.prototype.slice.call(arguments));
    };

    window.hiresMethodsSettle = function () {
        var args = stamp(Array.prototype.slice.call(arguments));
        Object.keys(pages).forEach(function (tab) {
            if (pages[tab].clicked) {
                pages[tab].settle = count;
                pages[tab].clicked = false;
            }
        });
        return args;
    };

    function config() {
        document.querySelectorAll('.hires-methods-help').forEach(function (node) {
            if (node.hiresMethods) return;
            try {
                node.hiresMethods = JSON.parse(node.textContent);
            } catch (e) {
                return;
            }
            pages[node.hiresMethods.tab] = {follow: node.hiresMethods.follow, timer: null, settle: 0, tries: 0};
        });
        return document.querySelectorAll('.hires-methods-help');
    }

    // Gradio re-creates a control when it is locked or unlocked, so titles are re-applied after updates.
    function applyHelp() {
        config().forEach(function (node) {
            var help = node.hiresMethods && node.hiresMethods.help;
            if (!help) return;
            Object.keys(help).forEach(function (id) {
                var element = document.getElementById(id);
                if (element && element.title !== help[id]) element.title = help[id];
            });
        });
    }

    function element(tab, item) {
        return document.getElementById('script_' + tab + '_hires_methods_' + item);
    }

    function refresh(tab) {
        var button = element(tab, 'refresh');
        if (!button) return;
        var target = button.tagName === 'BUTTON' ? button : button.querySelector('button');
        if (!target) return;
        pages[tab].clicked = true;
        target.click();
    }

    function answered(tab) {
        var summary = element(tab, 'summary');
        var shown = summary && summary.querySelector('[data-stamp]');
        var value = shown ? shown.dataset.stamp.split(':') : [];
        return value[0] === client && Number(value[1]) >= pages[tab].settle;
    }

    // Ask once more after the last edit, and again (every 700 ms, up to 10 times) until answered.
    function settle(tab) {
        var page = pages[tab];
        clearTimeout(page.timer);
        page.tries = 0;
        page.timer = setTimeout(function check() {
            if (page.tries > 0 && answered(tab) && !page.clicked) return;
            if (page.tries++ >= 10) return;
            refresh(tab);
            page.timer = setTimeout(check, 700);
        }, 300);
    }

    function edited(event) {
        var target = event.target;
        if (!target || !target.closest) return;
        config();
        Object.keys(pages).forEach(function (tab) {
            var follows = pages[tab].follow.some(function (prefix) {
                var block = target.closest('[id^="' + prefix + '"]');
                return block !== null;
            });
            if (follows) settle(tab);
        });
    }

    // The checkpoint the user selected, as the menu shows it (A1111: quicksettings; Forge: top bar).
    function selectedCheckpoint() {
        var input = gradioApp().querySelector('#setting_sd_model_checkpoint input, .model_selection input');
        return input ? input.value : null;
    }

    var asked = null;
    var tries = 0;
    function followCheckpoint() {
        var wanted = selectedCheckpoint();
        if (wanted === null) return;
        if (wanted !== asked) {
            asked = wanted;
            tries = 0;
        }
        Object.keys(pages).forEach(function (tab) {
            var summary = element(tab, 'summary');
            var shown = summary && summary.querySelector('[data-model]');
            if (!shown || shown.dataset.model === wanted || tries >= 30) return;
            refresh(tab);
            tries += 1;
        });
    }

    document.addEventListener('input', edited, true);
    document.addEventListener('change', edited, true);
    onUiUpdate(applyHelp);
    onUiLoaded(function () {
        applyHelp();
        Object.keys(pages).forEach(refresh);
        setInterval(followCheckpoint, 2000);
    });
})();
