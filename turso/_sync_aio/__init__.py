"""The machinery behind `turso.lib_sync_aio`: private, imported only by turso's own sync modules."""
