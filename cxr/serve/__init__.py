"""The local web page and JSON API of `python -m stages.serve` (cxr/serve/app.py, page.html)."""
