"""In-memory mapper and token-keeper behind a real grpc.aio server (the generated base classes), kept
honest by tests/contract: the same assertions run against them and against the real services."""

from zaptrix_testing.fakes.mapper import FakeMapper
from zaptrix_testing.fakes.serve import GrpcFakes, start_fakes, start_fakes_in_thread
from zaptrix_testing.fakes.token_keeper import FakeTokenKeeper, Portal

__all__ = ["FakeMapper", "FakeTokenKeeper", "GrpcFakes", "Portal", "start_fakes", "start_fakes_in_thread"]
