"""The layout of one peer organisation's crypto material (MSP, TLS, users) on disk."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class FabricOrg:
    """A peer organisation with one peer, as laid out in the network's work dir."""

    name: str
    """``Org1`` or ``Org2``."""
    msp_id: str
    domain: str
    peer_port: int
    chaincode_port: int
    operations_port: int
    crypto_dir: Path
    """``<workdir>/crypto/peerOrganizations/<domain>``."""

    @property
    def peer_host(self) -> str:
        """The peer's name in its certificates."""
        return f"peer0.{self.domain}"

    @property
    def peer_endpoint(self) -> str:
        """``127.0.0.1:port`` of the peer (endorser, deliver and Gateway services)."""
        return f"127.0.0.1:{self.peer_port}"

    @property
    def peer_tls_dir(self) -> Path:
        """The peer's TLS server material (server.crt, server.key, ca.crt)."""
        return self.crypto_dir / "peers" / self.peer_host / "tls"

    @property
    def tls_ca_cert(self) -> Path:
        """The org's TLS CA certificate: the root to trust when dialling its peer."""
        return self.crypto_dir / "tlsca" / f"tlsca.{self.domain}-cert.pem"

    @property
    def peer_msp_dir(self) -> Path:
        """The peer's own signing MSP."""
        return self.crypto_dir / "peers" / self.peer_host / "msp"

    def user_msp_dir(self, user: str = "User1") -> Path:
        """An identity's MSP dir; ``user`` is ``User1`` (client role) or ``Admin``."""
        return self.crypto_dir / "users" / f"{user}@{self.domain}" / "msp"

    def user_cert(self, user: str = "User1") -> Path:
        """The identity's X.509 signing certificate (PEM), for a Gateway client."""
        return self.user_msp_dir(user) / "signcerts" / f"{user}@{self.domain}-cert.pem"

    def user_tls_cert(self, user: str = "User1") -> Path:
        """The identity's TLS client certificate (from the org's TLS CA), for mutual TLS."""
        return self.crypto_dir / "users" / f"{user}@{self.domain}" / "tls" / "client.crt"

    def user_tls_key(self, user: str = "User1") -> Path:
        """The key of :meth:`user_tls_cert` (PEM, 0600)."""
        return self.crypto_dir / "users" / f"{user}@{self.domain}" / "tls" / "client.key"

    def user_key(self, user: str = "User1") -> Path:
        """The identity's private key (PEM, PKCS#8, ECDSA P-256), for a Gateway client."""
        keys = sorted((self.user_msp_dir(user) / "keystore").glob("*_sk"))
        if not keys:
            raise FileNotFoundError(f"no private key under {self.user_msp_dir(user)}/keystore")
        return keys[0]

    @property
    def admin_msp_dir(self) -> Path:
        """The org admin's MSP (used for channel join and chaincode lifecycle)."""
        return self.user_msp_dir("Admin")
