"""What many tests share: free ports and waiting (:mod:`.net`), polling (:mod:`.waiting`) and
running the ``oblix`` command line (:mod:`.commands`); the test tiers and async backends
(:mod:`.tiers`)."""
