"""Tests of the native ops (relground.ops); the shared base class is op_tester.OpTester."""
