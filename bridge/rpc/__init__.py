"""gRPC plumbing shared by every daemon: servers, error mapping, wire conversion."""
