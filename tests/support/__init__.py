"""What many tests share: free ports and waiting (:mod:`.net`), polling (:mod:`.waiting`) and
running the ``oblix`` command line (:mod:`.commands`)."""
