"""The embedded safety world: a toy request language (harmful, benign-but-scary and benign topics),
attack wrappers, and the SFT data of a target model that complies with everything."""
