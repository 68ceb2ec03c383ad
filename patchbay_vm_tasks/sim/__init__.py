"""Sims on the host side: which runner (a release, a git build, the builtin zipapp),
the binaries a sim needs, the sim files given and their guest paths, the runner process
in the guest, the work dir's run folders. The sim format itself is `simcore`; the runner
that runs in the guest is `simrunner`."""
