"""Test equipment for tests, benchmarks and scripts: a loopback sync server, a fault proxy, a front end."""
