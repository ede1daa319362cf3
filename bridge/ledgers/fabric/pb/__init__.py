"""Generated Hyperledger Fabric protobuf modules (fabric-protos v0.3.7).

Do not edit: run `python -m bridge.tools.gen_fabric_proto`.
"""
