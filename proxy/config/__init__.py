"""The configuration: its blocks (:mod:`.models`, plain dataclasses), value sources, loading
(:func:`proxy.config.loader.load_settings`), cross-field checks, and the hand-over to a
serving process (:mod:`.handoff`)."""
