"""Reading pickles without executing them: the opcode reader, the object graph, verdicts, the emitter."""
