# Not enabled: the module renders nothing and asserts nothing.
{ }
