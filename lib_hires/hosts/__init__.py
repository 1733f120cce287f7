"""Host adapters: the only code that imports the WebUI (`modules.*` in A1111, `backend.*` in Forge).

`base.Host` is everything a method may ask of the WebUI; `a1111.py` and `forge.py` implement it,
and the test suite implements it with real LDM modules at tiny sizes (`tests/host/`).
"""
