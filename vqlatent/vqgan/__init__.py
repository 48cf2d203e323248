"""VQGAN (Esser et al. 2021) as pure functions: the reconstruction, GAN and LeCam losses and the
adaptive weight of eq. (7). The networks are `vqlatent.nets.discriminator` (PatchGAN) and
`vqlatent.nets.lpips` (the perceptual loss); the task on the shared loop is
`vqlatent.trainers.vqgan`.
"""
