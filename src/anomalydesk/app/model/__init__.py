"""The app's model layer (Qt-free): plain-Python state the views subscribe to, ring buffers, settings,
and the notification policy. It imports the core's pure parts only, never the services or Qt."""
