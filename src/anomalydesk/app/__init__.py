"""The desktop app, in layers (docs/architecture.md, held by the import-linter contracts in pyproject.toml):

- `application`, `check`, `bench`, `bench_fleet`: what runs the app — `anomalydesk app`, `--check`, `bench app`;
- `widgets`: the Qt window, panels and tray;
- `services`: `CoreClient` and the session's readers and actions (Qt-free);
- `model`: the state the widgets show (Qt-free);
- below them the core (`anomalydesk.store`, `.detect`, `.ingest`, …), which never imports the app.
"""
