"""The engine contract: what export, the engine directory and the runtime agree on.

One low room that `export`, `engines`, `calibration` and `runtime` may all import (it imports only
`modeling`): shape specs and profiles (`shapes`), the table of components and how a stage runs its
graphs (`components`), and the engine directory's manifest (`manifest`). See docs/architecture.md.
"""
