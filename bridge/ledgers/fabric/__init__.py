"""The Hyperledger Fabric ledger kind: a Gateway client and the bridge chaincode's adapter.

``identity`` holds the signing identity (MSP id, X.509 certificate, P-256 key),
``gateway`` speaks the peer's Fabric Gateway and Deliver gRPC services, ``adapter``
implements :class:`bridge.ledgers.adapter.LedgerAdapter` over the bridge chaincode and
``addresses`` is the holder address codec for this kind.
"""
