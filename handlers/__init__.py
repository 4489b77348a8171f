"""Built-in handlers. Each is a plugin (``register(registry)``) loaded through the same
``taskhook.handlers`` entry-point group as users' handlers."""
