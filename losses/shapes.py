"""Shape-typed array annotations for the public losses (jaxtyping): `Float[ArrayLike, "B T V"]` reads as "a float
array of shape [B, T, V]", and one call's names must agree (every `B` the same B). They are checked at run time
only where a checker is installed (the tests install jaxtyping's import hook with beartype on `losses`); elsewhere
they cost nothing. Axis names: B rows, T positions, V vocabulary, R completion tokens, N rollouts (prompts x G)."""
from jaxtyping import Array, ArrayLike, Float, Int, Shaped

Scalar = Float[Array, ""]
Mask = Shaped[ArrayLike, "..."]        # 0/1 of any dtype (int, float, bool), the shape of what it masks

__all__ = ["Array", "ArrayLike", "Float", "Int", "Shaped", "Scalar", "Mask"]
