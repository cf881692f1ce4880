//! The `#[leakcheck::test]` attribute. Use it through the `leakcheck` crate;
//! the code it generates reaches only `::leakcheck::__private`.

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{format_ident, quote, quote_spanned};
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::{Attribute, Expr, ExprLit, ItemFn, Lit, LitStr, Meta, Token};

/// Marks a test whose fds, threads, child processes and heap are checked.
///
/// See the `leakcheck` crate for the options and where it checks.
#[proc_macro_attribute]
pub fn test(args: TokenStream, item: TokenStream) -> TokenStream {
    let item2: TokenStream2 = item.clone().into();
    let options = match syn::parse::<TestOptions>(args) {
        Ok(options) => options,
        Err(error) => return with_original(error, item2),
    };
    let function = match syn::parse::<ItemFn>(item) {
        Ok(function) => function,
        Err(error) => return with_original(error, item2),
    };
    match expand(options, function) {
        Ok(tokens) => tokens.into(),
        Err(error) => with_original(error, item2),
    }
}

/// On error: the original item, so the user sees one message, not twenty.
fn with_original(error: syn::Error, item: TokenStream2) -> TokenStream {
    let error = error.to_compile_error();
    quote!(#error #item).into()
}

struct AllowRule {
    kind: syn::Ident,
    pattern: Option<LitStr>,
    max: Option<syn::LitInt>,
    bytes: Option<syn::LitInt>,
    reason: LitStr,
}

#[derive(Default)]
struct TestOptions {
    allow: Vec<AllowRule>,
    skip: Vec<syn::Ident>,
    grace_ms: Option<u64>,
    repeat: Option<syn::LitInt>,
}

const KINDS: [&str; 5] = ["fd", "thread", "child", "heap", "file"];

fn kind_of(meta: &Meta) -> syn::Result<syn::Ident> {
    match meta {
        Meta::Path(path) if path.get_ident().is_some_and(|ident| KINDS.contains(&ident.to_string().as_str())) => {
            Ok(path.get_ident().cloned().expect("checked above"))
        }
        other => Err(syn::Error::new_spanned(other, "expected a kind: `fd`, `thread`, `child`, `heap` or `file`")),
    }
}

fn string_value(meta: &syn::MetaNameValue) -> syn::Result<LitStr> {
    match &meta.value {
        Expr::Lit(ExprLit { lit: Lit::Str(text), .. }) => Ok(text.clone()),
        other => Err(syn::Error::new_spanned(other, "expected a string literal")),
    }
}

fn int_value(meta: &syn::MetaNameValue) -> syn::Result<syn::LitInt> {
    match &meta.value {
        Expr::Lit(ExprLit { lit: Lit::Int(number), .. }) => Ok(number.clone()),
        other => Err(syn::Error::new_spanned(other, "expected an integer literal")),
    }
}

fn parse_grace(text: &LitStr) -> syn::Result<u64> {
    let value = text.value();
    let (number, scale) = if let Some(ms) = value.strip_suffix("ms") {
        (ms, 1.0)
    } else if let Some(s) = value.strip_suffix('s') {
        (s, 1000.0)
    } else {
        return Err(syn::Error::new_spanned(text, "expected a duration such as \"500ms\" or \"2s\""));
    };
    let number: f64 = number
        .trim()
        .parse()
        .map_err(|_| syn::Error::new_spanned(text, "expected a duration such as \"500ms\" or \"2s\""))?;
    Ok((number * scale) as u64)
}

impl Parse for TestOptions {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let mut options = TestOptions::default();
        for meta in Punctuated::<Meta, Token![,]>::parse_terminated(input)? {
            match &meta {
                Meta::List(list) if list.path.is_ident("allow") => {
                    options.allow.push(parse_allow(list)?);
                }
                Meta::List(list) if list.path.is_ident("skip") => {
                    let inner = list.parse_args_with(Punctuated::<Meta, Token![,]>::parse_terminated)?;
                    let mut items = inner.iter();
                    let kind =
                        kind_of(items.next().ok_or_else(|| {
                            syn::Error::new_spanned(list, "expected `skip(KIND, reason = \"...\")`")
                        })?)?;
                    let mut reason = None;
                    for item in items {
                        match item {
                            Meta::NameValue(pair) if pair.path.is_ident("reason") => reason = Some(string_value(pair)?),
                            other => {
                                return Err(syn::Error::new_spanned(other, "`skip` takes only `reason = \"...\"`"))
                            }
                        }
                    }
                    if reason.is_none_or(|reason| reason.value().trim().is_empty()) {
                        return Err(syn::Error::new_spanned(list, "`skip` needs a `reason = \"...\"` saying why"));
                    }
                    options.skip.push(kind);
                }
                Meta::NameValue(pair) if pair.path.is_ident("grace") => {
                    options.grace_ms = Some(parse_grace(&string_value(pair)?)?);
                }
                Meta::NameValue(pair) if pair.path.is_ident("repeat") => {
                    let runs = int_value(pair)?;
                    if runs.base10_parse::<u32>().map_or(true, |runs| runs == 0) {
                        return Err(syn::Error::new_spanned(
                            runs,
                            "`repeat` takes a number of measured runs, at least 1",
                        ));
                    }
                    options.repeat = Some(runs);
                }
                other => {
                    return Err(syn::Error::new_spanned(
                        other,
                        "unknown option: expected `allow(...)`, `skip(...)`, `grace = \"...\"` or `repeat = N`",
                    ))
                }
            }
        }
        Ok(options)
    }
}

fn parse_allow(list: &syn::MetaList) -> syn::Result<AllowRule> {
    let inner = list.parse_args_with(Punctuated::<Meta, Token![,]>::parse_terminated)?;
    let mut items = inner.iter();
    let kind = kind_of(
        items.next().ok_or_else(|| syn::Error::new_spanned(list, "expected `allow(KIND, ..., reason = \"...\")`"))?,
    )?;
    let expected_pattern = match kind.to_string().as_str() {
        "fd" => "target",
        "thread" => "name",
        "child" => "cmdline",
        "file" => "path",
        _ => "",
    };
    let mut rule =
        AllowRule { kind, pattern: None, max: None, bytes: None, reason: LitStr::new("", Span::call_site()) };
    let mut reason = None;
    for item in items {
        let Meta::NameValue(pair) = item else {
            return Err(syn::Error::new_spanned(item, "expected `key = value`"));
        };
        let key = pair.path.get_ident().map(ToString::to_string).unwrap_or_default();
        match key.as_str() {
            "reason" => reason = Some(string_value(pair)?),
            "max" if expected_pattern.is_empty() => {
                return Err(syn::Error::new_spanned(
                    pair,
                    "`max` counts fds, threads, children or files; the heap takes `bytes`",
                ))
            }
            "max" => rule.max = Some(int_value(pair)?),
            "bytes" if expected_pattern.is_empty() => rule.bytes = Some(int_value(pair)?),
            key if !expected_pattern.is_empty() && key == expected_pattern => rule.pattern = Some(string_value(pair)?),
            _ => {
                let expected = if expected_pattern.is_empty() {
                    "`bytes = N` or `reason = \"...\"`".to_owned()
                } else {
                    format!("`{expected_pattern} = \"glob\"`, `max = N` or `reason = \"...\"`")
                };
                return Err(syn::Error::new_spanned(
                    &pair.path,
                    format!("unknown key for `allow({})`: expected {expected}", rule.kind),
                ));
            }
        }
    }
    match reason {
        Some(reason) if !reason.value().trim().is_empty() => rule.reason = reason,
        _ => return Err(syn::Error::new_spanned(list, "every `allow` needs a `reason = \"...\"` saying why")),
    }
    Ok(rule)
}

/// Attributes of the test function, sorted by what becomes of them.
struct SortedAttributes {
    /// `#[cfg]`s: on every generated item.
    cfgs: Vec<Attribute>,
    /// `#[ignore]`, `#[should_panic]`, docs, lints: on the `#[test]` wrapper.
    wrapper: Vec<Attribute>,
    /// Attribute macros that make a test themselves (`#[tokio::test]`): on the body.
    runtime: Vec<Attribute>,
    ignore: Option<TokenStream2>,
    should_panic: TokenStream2,
}

fn sort_attributes(attrs: Vec<Attribute>) -> syn::Result<SortedAttributes> {
    let mut sorted = SortedAttributes {
        cfgs: Vec::new(),
        wrapper: Vec::new(),
        runtime: Vec::new(),
        ignore: None,
        should_panic: quote!(::leakcheck::__private::ShouldPanic::No),
    };
    for attr in attrs {
        let path = attr.path();
        if path.is_ident("test") {
            continue; // we emit our own
        } else if path.is_ident("cfg") {
            sorted.cfgs.push(attr);
        } else if path.is_ident("ignore") {
            let reason = match &attr.meta {
                Meta::NameValue(pair) => string_value(pair)?.value(),
                _ => String::new(),
            };
            sorted.ignore = Some(quote!(::core::option::Option::Some(#reason)));
            sorted.wrapper.push(attr);
        } else if path.is_ident("should_panic") {
            sorted.should_panic = match &attr.meta {
                Meta::Path(_) => quote!(::leakcheck::__private::ShouldPanic::Yes),
                Meta::NameValue(pair) => {
                    let text = string_value(pair)?;
                    quote!(::leakcheck::__private::ShouldPanic::WithMessage(#text))
                }
                Meta::List(list) => {
                    let pair: syn::MetaNameValue = list.parse_args()?;
                    if !pair.path.is_ident("expected") {
                        return Err(syn::Error::new_spanned(pair.path, "expected `expected = \"...\"`"));
                    }
                    let text = string_value(&pair)?;
                    quote!(::leakcheck::__private::ShouldPanic::WithMessage(#text))
                }
            };
            sorted.wrapper.push(attr);
        } else if path.segments.len() > 1 && path.segments.last().is_some_and(|segment| segment.ident == "test") {
            sorted.runtime.push(attr);
        } else {
            sorted.wrapper.push(attr);
        }
    }
    Ok(sorted)
}

fn expand(options: TestOptions, function: ItemFn) -> syn::Result<TokenStream2> {
    let ItemFn { attrs, vis, sig, block } = function;
    if !sig.inputs.is_empty() {
        return Err(syn::Error::new_spanned(&sig.inputs, "a test function takes no arguments"));
    }
    let attrs = sort_attributes(attrs)?;
    if sig.asyncness.is_some() && attrs.runtime.is_empty() {
        return Err(syn::Error::new_spanned(
            sig.asyncness,
            "an async test needs a runtime: put `#[tokio::test]` (or another test attribute) below `#[leakcheck::test]`",
        ));
    }
    let name = &sig.ident;
    let output = &sig.output;
    let body_fn = format_ident!("__leakcheck_body_{}", name);
    let run_fn = format_ident!("__leakcheck_run_{}", name);
    let options_const = format_ident!("__LEAKCHECK_OPTIONS_{}", name.to_string().to_uppercase());
    let registration = format_ident!("__LEAKCHECK_TEST_{}", name.to_string().to_uppercase());
    let SortedAttributes { cfgs, wrapper, runtime, ignore, should_panic } = attrs;
    let ignore = ignore.unwrap_or_else(|| quote!(::core::option::Option::None));

    let body = test_body(&sig, &block, &runtime);

    let allow = options.allow.iter().map(|rule| {
        let kind = kind_tokens(&rule.kind);
        let pattern = option_tokens(rule.pattern.as_ref().map(|p| quote!(#p)));
        let max = option_tokens(rule.max.as_ref().map(|m| quote!(#m)));
        let bytes = option_tokens(rule.bytes.as_ref().map(|b| quote!(#b)));
        let reason = &rule.reason;
        quote!(::leakcheck::__private::Allow { kind: #kind, pattern: #pattern, max: #max, bytes: #bytes, reason: #reason })
    });
    let skip = options.skip.iter().map(kind_tokens);
    let grace = option_tokens(options.grace_ms.map(|ms| quote!(#ms)));
    let repeat = option_tokens(options.repeat.as_ref().map(|runs| quote!(#runs)));

    Ok(quote! {
        #(#cfgs)*
        #[allow(non_upper_case_globals)]
        const #options_const: ::leakcheck::__private::Options = ::leakcheck::__private::Options {
            allow: &[#(#allow),*],
            skip: &[#(#skip),*],
            grace_ms: #grace,
            repeat: #repeat,
        };

        #(#cfgs)*
        #[allow(dead_code, unnameable_test_items, non_snake_case)]
        fn #body_fn() #output #body

        #(#cfgs)*
        #[allow(non_snake_case)]
        fn #run_fn() -> ::core::result::Result<(), ::std::string::String> {
            ::leakcheck::__private::IntoTestResult::into_test_result(#body_fn())
        }

        #(#cfgs)*
        #[::core::prelude::v1::test]
        #(#wrapper)*
        #vis fn #name() {
            ::leakcheck::__private::run_test(&#options_const, #run_fn)
        }

        #(#cfgs)*
        #[::leakcheck::__private::linkme::distributed_slice(::leakcheck::__private::TESTS)]
        #[linkme(crate = ::leakcheck::__private::linkme)]
        #[allow(non_upper_case_globals)]
        static #registration: ::leakcheck::__private::TestDef = ::leakcheck::__private::TestDef {
            module_path: ::core::module_path!(),
            name: ::core::stringify!(#name),
            run: #run_fn,
            ignore: #ignore,
            should_panic: #should_panic,
            options: #options_const,
        };
    })
}

/// The test's body: its block, or, with a runtime attribute (`#[tokio::test]`),
/// a call of the inner async fn that attribute turns into a sync one.
fn test_body(sig: &syn::Signature, block: &syn::Block, runtime: &[syn::Attribute]) -> TokenStream2 {
    let name = &sig.ident;
    if runtime.is_empty() {
        quote!(#block)
    } else {
        // The runtime attribute turns an inner async fn into a sync one that
        // the body calls. `#[tokio::test]` becomes `#[tokio::main]` with
        // tokio::test's default (current-thread) flavour: `#[test]` items
        // vanish in a `harness = false` target, `#[tokio::main]` works in
        // both. Other test attributes (and tokio's `start_paused`, which only
        // tokio::test knows) stay as they are: default harness only.
        let inner_sig = sig;
        let attrs = runtime.iter().map(|attr| {
            let path = attr.path();
            let is_tokio = path.segments.len() == 2 && path.segments[0].ident == "tokio";
            match &attr.meta {
                Meta::Path(_) if is_tokio => quote!(#[::tokio::main(flavor = "current_thread")]),
                Meta::List(list) if is_tokio && !list.tokens.to_string().contains("start_paused") => {
                    let tokens = &list.tokens;
                    let flavor = if tokens.to_string().contains("flavor") {
                        quote!()
                    } else {
                        quote!(flavor = "current_thread",)
                    };
                    quote!(#[::tokio::main(#flavor #tokens)])
                }
                _ => quote!(#attr),
            }
        });
        quote!({
            #(#attrs)*
            #inner_sig #block
            #name()
        })
    }
}

fn kind_tokens(kind: &syn::Ident) -> TokenStream2 {
    let variant = match kind.to_string().as_str() {
        "fd" => quote!(Fd),
        "thread" => quote!(Thread),
        "child" => quote!(Child),
        "file" => quote!(File),
        _ => quote!(Heap),
    };
    quote_spanned!(kind.span()=> ::leakcheck::__private::Kind::#variant)
}

fn option_tokens(value: Option<TokenStream2>) -> TokenStream2 {
    match value {
        Some(value) => quote!(::core::option::Option::Some(#value)),
        None => quote!(::core::option::Option::None),
    }
}
