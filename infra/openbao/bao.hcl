# OpenBao (Vault-compatible) for infra/compose.yaml: file storage on a volume, listener on
# the compose network only (published on 127.0.0.1). Put TLS in front (or tls_cert_file /
# tls_key_file here) before exposing it beyond the host.
ui            = true
disable_mlock = true   # no IPC_LOCK capability in the hardened container; swap is off on GPU servers

storage "file" {
  path = "/openbao/data"
}

listener "tcp" {
  address     = "0.0.0.0:8200"
  tls_disable = true
}

api_addr = "http://openbao:8200"
