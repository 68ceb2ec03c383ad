"""The results viewer: an HTTP server over the work dir, a static report, JUnit writers.

The API is the one of patchbay's own devtools server (RUNNER-FACTS.md section 6), so its
`ui/` client works against ours and our page reads runs written by either runner.
"""

# Here, not in server.py: task signatures use it, and the server's imports (http.server)
# need not load for every task.
DEFAULT_BIND = "127.0.0.1:7421"
