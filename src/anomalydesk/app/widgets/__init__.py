"""The app's Qt layer: the window, its panels, the tray and the Qt-side helpers. Widgets take the
model (and the services' `Actions`) in their constructors; they never reach into Redis themselves."""
