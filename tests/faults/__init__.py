"""Fault-injection tests: real faults on real sshd nodes."""
