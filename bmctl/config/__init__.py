"""Config model, loader and validation rules. Nothing here talks to a machine."""
from bmctl.config.loader import load_config, parse_config, resolve_path
from bmctl.config.model import ClusterConfig, Node
from bmctl.config.problems import ConfigError, Problem

__all__ = ["load_config", "parse_config", "resolve_path", "ClusterConfig", "Node", "ConfigError", "Problem"]
