"""Real servers for tests and `twintrack dev`: embedded PostgreSQL and Tansu, or env/Docker ones.

`discovery` decides where each server comes from (env URL, testcontainers, embedded); `postgres` and
`broker` run the embedded ones as child processes, so no Docker engine or internet access is needed.
"""
