"""Host adapters: the only code that imports the WebUI (`modules.*` in A1111, `backend.*` in Forge).

`lib_hires.host.Host` is everything a method may ask of the WebUI; `a1111.py` and `forge.py` adapt
each WebUI to it, and the test suite implements it with real LDM modules at tiny sizes (`tests/host/`).
`webui.py` is the glue the script file forwards to (accordion, infotext, X/Y/Z, API hook, jobs).
"""
