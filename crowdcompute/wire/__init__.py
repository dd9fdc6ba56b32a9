"""The wire: what clients, the foreman and workers say to each other.

Framing (:mod:`.framing`), the messages (:mod:`.messages`), foreman addresses
and connection files (:mod:`.addresses`), the runtime a peer announces
(:mod:`.runtime`) and every cross-process constant (:mod:`.constants`).
Standard library only, plus the one exception tree in ``crowdcompute.errors``:
the foreman, the worker and the SDK all import it, and it imports none of them.
"""
