"""The toy world: captioned clips of coloured shapes moving on a plain background."""
