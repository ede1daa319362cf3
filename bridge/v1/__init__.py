"""Generated gRPC/protobuf stubs for bridge.v1. Do not edit: run `make proto`."""
