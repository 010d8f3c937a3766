"""HTTP surface of the proxy: request parsing, headers, handlers, middlewares."""
