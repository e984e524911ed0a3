"""The configuration: typed models (:mod:`.models`), value sources, loading
(:func:`proxy.config.loader.load_settings`) and cross-field checks."""
