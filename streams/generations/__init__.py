"""Generations: a configuration deployed with its history (issue 26). A generation is an
application id of its own (`<app_id>-g<N>`: consumer groups, changelog, counter keys, internal
and output topics); the registry in Redis says which one the web and the alerts answer from."""
