# A small stand-in for the nixpkgs `lib`: the subset modules/msp-compliance.nix and its test
# harness use, so the module can be evaluated with `lib.evalModules` on machines where no
# nixpkgs exists (CI here). Our own code, written to behave like the real lib on that subset:
# option declarations and definitions, `mkIf`/`mkMerge`/`mkOverride` (mkDefault, mkForce),
# defaults at priority 1500, submodules with `freeformType`, list and attribute-set merging, the
# types the module uses, and errors that name the option (`A definition for option `x' is not
# of type ...`, `The option `x' does not exist`, `... has conflicting definition values`).
#
# It is only as good as its cross-check: nix/check.sh runs every golden and negative case with
# this file and, when MSP_NIX_LIB points at a real nixpkgs lib (nix-community/nixpkgs.lib),
# with that too, and requires identical output.
let
  inherit (builtins)
    all any attrNames concatLists concatMap concatStringsSep elem elemAt filter foldl' functionArgs
    genList head isAttrs isBool isFloat isFunction isInt isList isPath isString length
    listToAttrs map mapAttrs match removeAttrs split substring tail toJSON zipAttrsWith;

  # --- general helpers (lib.lists, lib.attrsets, lib.strings, lib.trivial) ---------------------

  id = x: x;
  last = list: elemAt list (length list - 1);
  toList = x: if isList x then x else [ x ];
  optional = cond: x: if cond then [ x ] else [ ];
  optionals = cond: list: if cond then list else [ ];
  optionalAttrs = cond: attrs: if cond then attrs else { };
  optionalString = cond: s: if cond then s else "";
  imap0 = f: list: genList (i: f i (elemAt list i)) (length list);
  imap1 = f: list: genList (i: f (i + 1) (elemAt list i)) (length list);
  unique = foldl' (acc: x: if elem x acc then acc else acc ++ [ x ]) [ ];
  nameValuePair = name: value: { inherit name value; };
  mapAttrs' = f: attrs: listToAttrs (map (name: f name attrs.${name}) (attrNames attrs));
  mapAttrsToList = f: attrs: map (name: f name attrs.${name}) (attrNames attrs);
  filterAttrs = pred: attrs:
    listToAttrs (concatMap (name: optional (pred name attrs.${name}) (nameValuePair name attrs.${name})) (attrNames attrs));
  attrByPath = path: default: set:
    if path == [ ] then set
    else if isAttrs set && set ? ${head path} then attrByPath (tail path) default set.${head path}
    else default;
  setAttrByPath = path: value:
    if path == [ ] then value else { ${head path} = setAttrByPath (tail path) value; };
  recursiveUpdate = lhs: rhs:
    lhs // mapAttrs
      (name: value: if isAttrs value && isAttrs (lhs.${name} or null) then recursiveUpdate lhs.${name} value else value)
      rhs;
  concatStrings = concatStringsSep "";
  concatMapStrings = f: list: concatStrings (map f list);
  hasPrefix = prefix: s: substring 0 (builtins.stringLength prefix) s == prefix;
  hasSuffix = suffix: s:
    let n = builtins.stringLength s; k = builtins.stringLength suffix; in
    n >= k && substring (n - k) k s == suffix;
  removePrefix = prefix: s:
    if hasPrefix prefix s then substring (builtins.stringLength prefix) (-1) s else s;
  escapeRegex = builtins.replaceStrings
    [ "\\" "[" "]" "{" "}" "(" ")" "^" "$" "." "|" "*" "+" "?" ]
    [ "\\\\" "\\[" "\\]" "\\{" "\\}" "\\(" "\\)" "\\^" "\\$" "\\." "\\|" "\\*" "\\+" "\\?" ];
  splitString = sep: s: filter isString (split (escapeRegex sep) s);
  mod = a: b: a - b * (a / b);
  # Decimal, zero padding allowed (lib.toIntBase10).
  toIntBase10 = s:
    let digits = match "[[:space:]]*0*([0-9]+)[[:space:]]*" s; in
    if digits == null then throw "toIntBase10: could not convert ${toJSON s} to an integer"
    else builtins.fromJSON (head digits);
  isDerivation = x: isAttrs x && (x.type or null) == "derivation";
  isStorePath = x: isString x && hasPrefix "${builtins.storeDir}/" x;
  isStringLike = x: isString x || isPath x || x ? outPath || x ? __toString;

  # Option paths as the real lib shows them: identifiers bare, anything else quoted.
  showOption = loc: concatStringsSep "."
    (map (part: if match "[a-zA-Z_][a-zA-Z0-9_'-]*" part != null then part else toJSON part) loc);
  # A definition's value for messages (never copies a path into the store, never fails).
  pretty = value:
    if isFunction value then "<function>"
    else if isPath value then toString value
    else if isList value then "[ ${concatStringsSep " " (map pretty value)} ]"
    else if isDerivation value then "<derivation ${value.name or "?"}>"
    else if isAttrs value then "{ ${concatStrings (map (name: "${name} = ${pretty value.${name}}; ") (attrNames value))}}"
    else toJSON value;
  showValue = value: ": ${pretty value}";
  showDefs = defs: concatMapStrings (def: "\n- In `${def.file}'${showValue def.value}") defs;

  # --- option merging primitives (lib.options) ------------------------------------------------

  mergeEqualOption = loc: defs:
    foldl'
      (first: def:
        if def.value != first then
          throw "The option `${showOption loc}' has conflicting definition values:${showDefs defs}\nUse `lib.mkForce value` or `lib.mkDefault value` to change the priority on any of these definitions."
        else first)
      (head defs).value
      (tail defs);
  mergeOneOption = loc: defs:
    if length defs == 1 then (head defs).value
    else throw "The unique option `${showOption loc}' is defined multiple times. Definition values:${showDefs defs}";
  mergeDefaultOption = loc: defs:
    let values = map (def: def.value) defs; in
    if length values == 1 then head values
    else if all isList values then concatLists values
    else if all isAttrs values then foldl' (a: b: a // b) { } values
    else if all isBool values then any id values
    else if all isString values then concatStrings values
    else if all isInt values && all (x: x == head values) values then head values
    else throw "Cannot merge definitions of `${showOption loc}'. Definition values:${showDefs defs}";

  # --- properties (lib.modules) ---------------------------------------------------------------

  mkIf = condition: content: { _type = "if"; inherit condition content; };
  mkMerge = contents: { _type = "merge"; inherit contents; };
  mkOverride = priority: content: { _type = "override"; inherit priority content; };
  mkOptionDefault = mkOverride 1500;
  mkDefault = mkOverride 1000;
  mkForce = mkOverride 50;

  # Distributes properties over an attribute set's attributes.
  pushDownProperties = cfg:
    if (cfg._type or "") == "merge" then concatMap pushDownProperties cfg.contents
    else if (cfg._type or "") == "if" then map (mapAttrs (_: v: mkIf cfg.condition v)) (pushDownProperties cfg.content)
    else if (cfg._type or "") == "override" then map (mapAttrs (_: v: mkOverride cfg.priority v)) (pushDownProperties cfg.content)
    else [ cfg ];

  # Removes mkIf/mkMerge from a definition's value: a list of the values that remain.
  dischargeProperties = value:
    if (value._type or "") == "merge" then concatMap dischargeProperties value.contents
    else if (value._type or "") == "if" then
      if !isBool value.condition then throw "mkIf called with a non-Boolean condition"
      else if value.condition then dischargeProperties value.content
      else [ ]
    else [ value ];

  # Keeps the definitions of the highest priority (lowest number), unwrapped.
  filterOverrides = defs:
    let
      priority = def: if (def.value._type or "") == "override" then def.value.priority else 100;
      highest = foldl' (acc: def: if priority def < acc then priority def else acc) 9999 defs;
      strip = def: if (def.value._type or "") == "override" then def // { value = def.value.content; } else def;
    in
    map strip (filter (def: priority def == highest) defs);

  # The value of one option from its (file, value) definitions.
  mergeDefinitions = loc: type: defs:
    let
      discharged = concatMap (def: map (value: { inherit (def) file; inherit value; }) (dischargeProperties def.value)) defs;
      final = concatMap (def: map (value: def // { inherit value; }) (dischargeProperties def.value)) (filterOverrides discharged);
      invalid = filter (def: !type.check def.value) final;
      isDefined = final != [ ];
      mergedValue =
        if invalid != [ ] then throw "A definition for option `${showOption loc}' is not of type `${type.description}'. Definition values:${showDefs invalid}"
        else if !isDefined then throw "The option `${showOption loc}' was accessed but has no value defined. Try setting the option."
        else type.merge loc final;
    in
    {
      inherit isDefined mergedValue;
      optionalValue = if isDefined then { value = mergedValue; } else { };
    };

  # --- options and types (lib.options, lib.types) ---------------------------------------------

  mkOption = attrs: attrs // { _type = "option"; };
  isOption = x: isAttrs x && (x._type or null) == "option";
  mkEnableOption = name: mkOption {
    type = types.bool;
    default = false;
    example = true;
    description = "Whether to enable ${name}.";
  };
  mkPackageOption = pkgs: name: { default ? name, ... }:
    let path = toList default; in
    mkOption {
      type = types.package;
      default = attrByPath path (throw "${concatStringsSep "." path} cannot be found in pkgs") pkgs;
      defaultText = literalExpression "pkgs.${concatStringsSep "." path}";
      description = "The ${name} package to use.";
    };
  literalExpression = text: { _type = "literalExpression"; inherit text; };

  mkOptionType = { name, description ? name, check ? (_: true), merge ? mergeDefaultOption, ... }@attrs:
    attrs // { _type = "option-type"; inherit name description check merge; };

  addCheck = type: check: type // { check = x: type.check x && check x; };

  intBetween = name: lowest: highest: description:
    addCheck types.int (x: x >= lowest && x <= highest) // {
      inherit name;
      description = "${description}between ${toString lowest} and ${toString highest} (both inclusive)";
    };

  # Element types that are themselves phrases get parentheses ("list of (null or string)").
  phrase = type: if elem type.name [ "submodule" "nullOr" "either" ] then "(${type.description})" else type.description;

  either = t1: t2: mkOptionType {
    name = "either";
    description = "${t1.description} or ${t2.description}";
    check = x: t1.check x || t2.check x;
    merge = loc: defs:
      let values = map (def: def.value) defs; in
      if all t1.check values then t1.merge loc defs
      else if all t2.check values then t2.merge loc defs
      else mergeOneOption loc defs;
  };

  submoduleWith = { modules, specialArgs ? { } }: mkOptionType {
    name = "submodule";
    description = "submodule";
    check = x: isAttrs x || isFunction x || isPath x;
    merge = loc: defs: (evalModules {
      modules = modules ++ map (def: { _file = def.file; imports = [ def.value ]; }) defs;
      specialArgs = specialArgs // { name = last loc; };
      prefix = loc;
    }).config;
  };

  types = {
    bool = mkOptionType { name = "bool"; description = "boolean"; check = isBool; merge = mergeEqualOption; };
    int = mkOptionType { name = "int"; description = "signed integer"; check = isInt; merge = mergeEqualOption; };
    float = mkOptionType { name = "float"; description = "floating point number"; check = isFloat; merge = mergeEqualOption; };
    str = mkOptionType { name = "str"; description = "string"; check = isString; merge = mergeEqualOption; };
    lines = mkOptionType {
      name = "lines";
      description = "strings concatenated with \"\\n\"";
      check = isString;
      merge = _: defs: concatStringsSep "\n" (map (def: def.value) defs);
    };
    path = mkOptionType {
      name = "path";
      description = "path";
      check = x: isStringLike x && substring 0 1 (toString x) == "/";
      merge = mergeEqualOption;
    };
    package = mkOptionType { name = "package"; description = "package"; check = x: isDerivation x || isStorePath x; merge = mergeOneOption; };
    unspecified = mkOptionType { name = "unspecified"; description = "unspecified value"; };
    strMatching = pattern: types.str // {
      name = "strMatching ${toJSON pattern}";
      description = "string matching the pattern ${pattern}";
      check = x: isString x && match pattern x != null;
    };
    enum = values: mkOptionType {
      name = "enum";
      description =
        if length values == 1 then "value ${toJSON (head values)} (singular enum)"
        else "one of ${concatStringsSep ", " (map toJSON values)}";
      check = x: elem x values;
      merge = mergeEqualOption;
    };
    ints = {
      between = lowest: highest: intBetween "intBetween" lowest highest "integer ";
      unsigned = addCheck types.int (x: x >= 0) // { name = "unsignedInt"; description = "unsigned integer, meaning >=0"; };
      u16 = intBetween "unsignedInt16" 0 65535 "16 bit unsigned integer; ";
      u32 = intBetween "unsignedInt32" 0 4294967295 "32 bit unsigned integer; ";
    };
    port = types.ints.u16;
    nullOr = elemType: mkOptionType {
      name = "nullOr";
      description = "null or ${elemType.description}";
      check = x: x == null || elemType.check x;
      merge = loc: defs:
        let nulls = length (filter (def: def.value == null) defs); in
        if nulls == length defs then null
        else if nulls != 0 then throw "The option `${showOption loc}' is defined both null and not null, in ${concatStringsSep ", " (map (def: "`${def.file}'") defs)}."
        else elemType.merge loc defs;
    };
    either = either;
    oneOf = ts: foldl' either (head ts) (tail ts);
    listOf = elemType: mkOptionType {
      name = "listOf";
      description = "list of ${phrase elemType}";
      check = isList;
      merge = loc: defs: map (it: it.value) (filter (it: it ? value) (concatLists (imap1
        (n: def: imap1
          (m: value: (mergeDefinitions (loc ++ [ "[definition ${toString n}-entry ${toString m}]" ]) elemType [{ inherit (def) file; inherit value; }]).optionalValue)
          def.value)
        defs)));
    };
    attrsOf = elemType: mkOptionType {
      name = "attrsOf";
      description = "attribute set of ${phrase elemType}";
      check = isAttrs;
      merge = loc: defs: mapAttrs (_: it: it.value) (filterAttrs (_: it: it ? value) (zipAttrsWith
        (name: elemDefs: (mergeDefinitions (loc ++ [ name ]) elemType elemDefs).optionalValue)
        (map (def: mapAttrs (_: value: { inherit (def) file; inherit value; }) def.value) defs)));
    };
    submodule = modules: submoduleWith { modules = toList modules; };
    inherit submoduleWith;
  };

  # --- evalModules (lib.modules) --------------------------------------------------------------

  # Modules as { file, options, config, freeformType, imports }, with functions called.
  loadModule = args: file: module:
    let
      fromPath = isPath module || isString module;
      source = if fromPath then import module else module;
      file' = if fromPath then toString module else file;
      called =
        if isFunction source then
          source (mapAttrs (name: _: args.${name} or (args._moduleArgs.${name} or (throw "module ${file'} needs the argument `${name}', which is not provided"))) (filterAttrs (name: optional: !optional || args ? ${name} || args._moduleArgs ? ${name}) (functionArgs source)))
        else source;
      special = [ "_file" "key" "imports" "options" "config" "freeformType" "meta" "_class" "disabledModules" ];
      explicit = called ? options || called ? config;
    in
    {
      file = called._file or file';
      options = called.options or { };
      config = if explicit then called.config or { } else removeAttrs called special;
      freeformType = called.freeformType or null;
      imports = called.imports or [ ];
    };

  collectModules = args: file: modules: concatMap
    (module:
      let loaded = loadModule args file module; in
      [ loaded ] ++ collectModules args loaded.file loaded.imports)
    modules;

  # Declared options at `loc` and the definitions below it: the option values (and sub-trees),
  # plus the definitions no option matched, with their path relative to the module root.
  mergeTree = loc: prefix: decls: defs:
    let
      pushed = concatMap (def: map (value: { inherit (def) file; inherit value; }) (pushDownProperties def.value)) defs;
      declNames = unique (concatMap (decl: attrNames decl.options) decls);
      declsFor = name: concatMap (decl: optional (decl.options ? ${name}) { inherit (decl) file; options = decl.options.${name}; }) decls;
      defsFor = name: concatMap (def: optional (def.value ? ${name}) { inherit (def) file; value = def.value.${name}; }) pushed;
      child = name:
        let
          childDecls = declsFor name;
          options = filter (decl: isOption decl.options) childDecls;
        in
        if options == [ ] then mergeTree (loc ++ [ name ]) (prefix ++ [ name ]) childDecls (defsFor name)
        else if length options > 1 then throw "The option `${showOption (loc ++ [ name ])}' is declared multiple times, in ${concatStringsSep ", " (map (it: it.file) options)}."
        else {
          value = evalOption (loc ++ [ name ]) (head options) (defsFor name);
          options = (head options).options // { loc = loc ++ [ name ]; };
          unmatched = [ ];
        };
      children = listToAttrs (map (name: nameValuePair name (child name)) declNames);
      here = concatMap
        (def: concatMap (name: optional (!elem name declNames) { inherit (def) file; prefix = prefix ++ [ name ]; value = def.value.${name}; }) (attrNames def.value))
        pushed;
    in
    {
      value = mapAttrs (_: it: it.value) children;
      options = mapAttrs (_: it: it.options) children;
      unmatched = here ++ concatMap (name: children.${name}.unmatched) declNames;
    };

  evalOption = loc: decl:
    let
      option = decl.options;
      type = option.type or types.unspecified;
      withDefault = defs: (optional (option ? default) { inherit (decl) file; value = mkOptionDefault option.default; }) ++ defs;
    in
    defs: (option.apply or id) (mergeDefinitions loc type (withDefault defs)).mergedValue;

  evalModules = { modules, specialArgs ? { }, prefix ? [ ] }:
    let
      args = specialArgs // {
        inherit lib config;
        options = throw "the stand-in lib does not provide the `options' module argument";
        _moduleArgs = result.value._module.args;
      };
      collected = collectModules args "<unknown-file>" (modules ++ [ builtinModule ]);
      builtinModule = {
        _file = "lib-stub.nix";
        options._module.args = mkOption { type = types.attrsOf types.unspecified; default = { }; };
      };
      result = mergeTree prefix [ ] (map (m: { inherit (m) file options; }) collected) (map (m: { inherit (m) file; value = m.config; }) collected);
      freeformTypes = filter (it: it != null) (map (m: m.freeformType) collected);
      freeformType = if freeformTypes == [ ] then null else last freeformTypes;
      unmatched = filter (it: it.prefix != [ "_module" ]) result.unmatched;
      declared = removeAttrs result.value [ "_module" ];
      config =
        if freeformType != null && unmatched == [ ] then declared
        else if freeformType != null then
          recursiveUpdate (freeformType.merge prefix (map (it: { inherit (it) file; value = setAttrByPath it.prefix it.value; }) unmatched)) declared
        else if unmatched != [ ] then
          let it = head unmatched; in
          throw "The option `${showOption (prefix ++ it.prefix)}' does not exist. Definition values:${showDefs [ it ]}"
        else declared;
    in
    {
      inherit config;
      # The declarations (each option's attributes and `loc`), without the real lib's extras.
      options = removeAttrs result.options [ "_module" ];
    };

  lib = {
    inherit
      id last toList optional optionals optionalAttrs optionalString imap0 imap1 unique nameValuePair
      mapAttrs' mapAttrsToList filterAttrs attrByPath setAttrByPath recursiveUpdate concatStrings
      concatMapStrings hasPrefix hasSuffix removePrefix splitString mod toIntBase10 isDerivation
      showOption mergeEqualOption mergeOneOption mergeDefaultOption mkIf mkMerge mkOverride
      mkOptionDefault mkDefault mkForce mkOption mkEnableOption mkPackageOption literalExpression
      mkOptionType types evalModules;
    inherit (builtins) all any attrNames concatLists concatMap concatStringsSep elem elemAt filter
      foldl' head length mapAttrs tail;
  };
in
lib
