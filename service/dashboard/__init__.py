"""The dashboard's front end: TypeScript sources (``src/``) and the files built from them
(``static/``, committed and shipped as package data), served by ``service.api.dashboard``.

``make dashboard`` (compose/dashboard/build.sh) rebuilds ``static/`` from ``src/`` with the
esbuild and TypeScript versions pinned in ``package-lock.json``; tests/unit/test_dashboard_build.py
checks that the committed files are that build. No Python code lives here.
"""
