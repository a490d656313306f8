"""Tools for the CLI, the tests and the benchmarks: local infrastructure (`infra`), a worker in a
child process (`worker_process`), the demo, the simulator, live traffic, the report table and a
collector-style producer. Nothing in the worker imports them."""
