//! Tests against the diffusers reference fixture.
