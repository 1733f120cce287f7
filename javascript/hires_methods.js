// Hires Methods: hover help on the accordion's controls. The texts come from lib_hires/params.py,
// rendered by the accordion as JSON in a hidden element ({elem_id: help}).
(function () {
    function applyHelp() {
        document.querySelectorAll('.hires-methods-help').forEach(function (node) {
            if (node.dataset.hiresMethodsApplied) return;
            var help;
            try {
                help = JSON.parse(node.textContent);
            } catch (e) {
                return;
            }
            Object.keys(help).forEach(function (id) {
                var element = document.getElementById(id);
                if (element) element.title = help[id];
            });
            node.dataset.hiresMethodsApplied = '1';
        });
    }
    onUiUpdate(applyHelp);
})();
