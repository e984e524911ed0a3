"""The configuration: typed models, value sources, loading and cross-field checks."""

from proxy.config.loader import LoadedConfig, load_settings
from proxy.config.models import ConnectorConfig, Settings

__all__ = ["ConnectorConfig", "LoadedConfig", "Settings", "load_settings"]
