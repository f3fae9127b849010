"""spotline's shared domain code: the job contract, the job store, queues, settings."""
