"""spotline's GPU worker: receive -> supervise -> decide."""
