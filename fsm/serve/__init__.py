"""The wrapper side (``fsm-agent serve``): its sans-I/O ``core`` (WrapperCore) beside its ``host``
(Kilo, a socket, real time), the job API, auto-commit and the in-container supervisor."""
