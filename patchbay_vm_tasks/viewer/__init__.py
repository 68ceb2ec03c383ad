"""The results viewer: an HTTP server over the work dir, a static report, JUnit writers.

The API is the one of patchbay's own devtools server (RUNNER-FACTS.md section 6), so its
`ui/` client works against ours and our page reads runs written by either runner.
"""
