"""The proxy's configuration: the YAML file's model (`model`) and its loading (`loader`).

`loader.load_config` reads, validates and compiles a file into a `LoadedConfig`; nothing
else in the proxy reads the file or the environment variables it names.
"""
