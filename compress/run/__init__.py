"""`compress run`: the spec (`recipe`), the stages that make variants (`make`: export and quantize; `recovery`:
prune), the fallback search (`fallback`), the measurement (`measure`), and the list of stages that the pipeline
iterates (`pipeline`), all over one shared `context.Context`."""
