"""Outputs -> Redis: the counters consumer (`consumer`), the Redis store with its Lua
(`redis_store`), the reports every store answers alike (`base`), and the in-memory store for
tests of the readers (`memory_store`)."""
