"""Loopback test infrastructure shared by the tests and benchmarks: servers, proxies and certificates."""
