"""Preparation: grey-matter masks, input discovery, confounds and denoising."""
