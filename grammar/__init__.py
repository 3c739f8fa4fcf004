"""The Lark grammar of the rules language, shipped as a package resource."""
