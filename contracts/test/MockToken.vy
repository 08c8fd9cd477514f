# pragma version ~=0.4.3
"""
@title MockToken
@notice The devnet's payment token: snekmate's ERC-20 with a `mint` anyone may call, so that
        devnet clients and participants can fund themselves. Test and devnet use only; a real
        deployment passes an existing ERC-20 to the deploy routine instead.
"""

# ---------------------------------------------------------------- imports

from snekmate.auth import ownable
from snekmate.tokens import erc20

initializes: ownable
initializes: erc20[ownable := ownable]

exports: (
    erc20.transfer,
    erc20.transferFrom,
    erc20.approve,
    erc20.balanceOf,
    erc20.allowance,
    erc20.totalSupply,
    erc20.name,
    erc20.symbol,
    erc20.decimals,
)


# ---------------------------------------------------------------- constructor

@deploy
def __init__():
    ownable.__init__()
    erc20.__init__("Nullius Mock Token", "NULL", 18, "Nullius Mock Token", "1")


# ---------------------------------------------------------------- external

@external
def mint(to: address, amount: uint256):
    """
    @notice Creates `amount` tokens for `to`; open to anyone because it is a devnet token.
    @param to The receiver of the new tokens.
    @param amount The amount in base units.
    """
    erc20._mint(to, amount)
