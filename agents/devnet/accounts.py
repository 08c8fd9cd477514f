"""The devnet's accounts: anvil's default mnemonic, derived rather than hard-coded."""

from __future__ import annotations

from eth_account import Account
from eth_account.signers.local import LocalAccount

ANVIL_MNEMONIC = "test test test test test test test test test test test junk"

Account.enable_unaudited_hdwallet_features()


def anvil_account(index: int) -> LocalAccount:
    return Account.from_mnemonic(ANVIL_MNEMONIC, account_path=f"m/44'/60'/0'/0/{index}")
